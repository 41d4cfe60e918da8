//! Appends against real PostgreSQL: optimistic conflicts, idempotency keys under concurrent
//! retries, content-addressed blobs, stream loading with and without snapshots, and the log
//! epoch.

mod common;

use std::time::Duration;

use aggregates::{DocId, Document, DocumentCommand, DocumentEvent, LogCursor, Restore};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use docledger::eventlog::{
    AppendRequest, Appended, IdempotencyKey, IdempotentResult, LogError, PgLog,
};
use futures::future::join_all;
use projections::LogSource;

use common::{blob_bytes, doc, put_document, request, row_events, sha256_hex, Follower, TestLog};

/// Longest a test waits for appends that must not block each other.
const NO_HANG: Duration = Duration::from_secs(20);

async fn event_count(t: &TestLog, doc_id: &DocId) -> Result<i64> {
    let client = t.log.client().await?;
    Ok(client
        .query_one(
            "SELECT count(*) FROM events WHERE stream_id = $1",
            &[&doc_id.as_str()],
        )
        .await?
        .get(0))
}

fn committed(appended: &Appended) -> Result<(LogCursor, i64)> {
    match appended {
        Appended::Committed {
            last,
            stream_version,
        } => Ok((*last, *stream_version)),
        other => bail!("expected a committed append, got {other:?}"),
    }
}

/// Decides `command` on `doc`, appends the events (with the blob's bytes when the command
/// stores one) and applies them to `doc`. Returns None when the command changes nothing.
async fn execute(
    log: &PgLog,
    doc_id: &DocId,
    doc: &mut Document,
    command: &DocumentCommand,
    blob: Option<&Bytes>,
) -> Result<Option<Appended>> {
    let events = doc.decide(command)?;
    if events.is_empty() {
        return Ok(None);
    }
    let mut next = doc.clone();
    for event in &events {
        next.apply_event(event);
    }
    let sha = blob.map(|b| sha256_hex(b));
    let stores_blob = events
        .iter()
        .any(|e| matches!(e, DocumentEvent::BlobStored { .. }));
    let appended = log
        .appends()
        .append(AppendRequest {
            doc_id,
            expected_stream_version: doc.stream_version,
            events: &events,
            doc_version: next.version,
            deleted: next.deleted,
            blob: sha.as_deref().zip(blob.cloned()).filter(|_| stores_blob),
            idempotency: None,
            resolves: None,
        })
        .await?;
    *doc = next;
    Ok(Some(appended))
}

/// Two appends race with the same expected version: exactly one wins, the other is told the
/// version the winner left. Each contender appends a different number of events, so
/// `actual` names the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_appends_with_one_expected_version_one_wins() -> Result<()> {
    let t = TestLog::create("racing_appends_one_wins", 4).await?;
    let log = &t.log;
    for stream in ["fresh", "existing"] {
        let doc_id = doc(stream);
        let mut version = 0i64;
        if stream == "existing" {
            log.appends()
                .append(request(&doc_id, 0, &row_events(1, 3, "setup")))
                .await?;
            version = 3;
        }
        for round in 0..10u64 {
            let two = row_events(round + 2, 2, "two");
            let three = row_events(round + 2, 3, "three");
            let (r2, r3) = tokio::time::timeout(
                NO_HANG,
                futures::future::join(
                    log.appends().append(request(&doc_id, version, &two)),
                    log.appends().append(request(&doc_id, version, &three)),
                ),
            )
            .await
            .context("racing appends hung")?;
            let (winner, loser, winner_events) = match (&r2, &r3) {
                (Ok(a), Err(e)) => (a, e, 2),
                (Err(e), Ok(a)) => (a, e, 3),
                other => bail!("{stream} round {round}: expected one winner, got {other:?}"),
            };
            let (_, new_version) = committed(winner)?;
            assert_eq!(new_version, version + winner_events);
            match loser {
                LogError::Conflict {
                    expected, actual, ..
                } => {
                    assert_eq!(*expected, version, "{stream} round {round}");
                    assert_eq!(*actual, new_version, "{stream} round {round}");
                }
                other => bail!("expected a conflict, got {other}"),
            }
            version = new_version;
            assert_eq!(event_count(&t, &doc_id).await?, version);
            assert_eq!(log.reads().stream_version(&doc_id).await?, version);
        }
    }
    t.drop_database().await
}

/// The deterministic form of the race: the loser waits on the winner's open transaction and,
/// once it commits, finds the stream moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_waits_for_a_running_one_then_conflicts() -> Result<()> {
    let t = TestLog::create("append_waits_then_conflicts", 4).await?;
    let log = &t.log;
    let doc_id = doc("contended");
    log.appends()
        .append(request(&doc_id, 0, &row_events(1, 3, "setup")))
        .await?;

    let mut client = log.client().await?;
    let tx = client.transaction().await?;
    let first = row_events(2, 2, "first");
    log.appends()
        .append_in(&tx, request(&doc_id, 3, &first))
        .await?;

    let second = tokio::spawn({
        let log = log.clone();
        let doc_id = doc_id.clone();
        async move {
            let events = row_events(2, 1, "second");
            log.appends().append(request(&doc_id, 3, &events)).await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the second append must wait on the stream row"
    );
    tx.commit().await?;
    match tokio::time::timeout(NO_HANG, second).await?? {
        Err(LogError::Conflict {
            expected: 3,
            actual: 5,
            ..
        }) => {}
        other => bail!("expected Conflict {{ expected: 3, actual: 5 }}, got {other:?}"),
    }
    assert_eq!(event_count(&t, &doc_id).await?, 5);
    drop(client);
    t.drop_database().await
}

/// As many stale appends as the pool has connections, at once: each is a conflict, and
/// reporting it must not need a second connection (which would wait forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_appends_filling_the_pool_all_conflict() -> Result<()> {
    const POOL_SIZE: usize = 4;
    let t = TestLog::create("stale_appends_fill_pool", POOL_SIZE).await?;
    let log = &t.log;
    let doc_id = doc("moved-on");
    log.appends()
        .append(request(&doc_id, 0, &row_events(1, 3, "setup")))
        .await?;
    let stale = row_events(2, 1, "stale");
    let results = tokio::time::timeout(
        NO_HANG,
        join_all((0..POOL_SIZE).map(|_| log.appends().append(request(&doc_id, 1, &stale)))),
    )
    .await
    .context("stale appends hung: conflict handling waits for a second pooled connection")?;
    for result in results {
        match result {
            Err(LogError::Conflict {
                expected: 1,
                actual: 3,
                ..
            }) => {}
            other => bail!("expected Conflict {{ expected: 1, actual: 3 }}, got {other:?}"),
        }
    }
    assert_eq!(event_count(&t, &doc_id).await?, 3);
    t.drop_database().await
}

/// Expecting more events than the stream holds is a conflict too, and appends nothing: not
/// the events, not the stream row, not the blob, not the idempotency key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_ahead_of_the_stream_conflicts_and_appends_nothing() -> Result<()> {
    let t = TestLog::create("append_ahead_conflicts", 4).await?;
    let log = &t.log;
    let events = row_events(6, 2, "ahead");

    let fresh = doc("fresh");
    let blob = blob_bytes(5, 4096);
    let sha = sha256_hex(&blob);
    let mut ahead_with_blob = request(&fresh, 5, &events);
    ahead_with_blob.blob = Some((&sha, blob.clone()));
    match log.appends().append(ahead_with_blob).await {
        Err(LogError::Conflict {
            expected: 5,
            actual: 0,
            ..
        }) => {}
        other => bail!("expected Conflict {{ expected: 5, actual: 0 }}, got {other:?}"),
    }
    assert_eq!(log.reads().stream_state(&fresh).await?, None);
    assert_eq!(event_count(&t, &fresh).await?, 0);
    let client = log.client().await?;
    let blobs: i64 = client
        .query_one("SELECT count(*) FROM blobs", &[])
        .await?
        .get(0);
    assert_eq!(blobs, 0, "a conflicting append stores no blob either");
    drop(client);

    let existing = doc("existing");
    log.appends()
        .append(request(&existing, 0, &row_events(1, 3, "setup")))
        .await?;
    let key = IdempotencyKey::new("ahead-key".into(), b"append ahead");
    let mut ahead = request(&existing, 5, &events);
    ahead.idempotency = Some(&key);
    match log.appends().append(ahead).await {
        Err(LogError::Conflict {
            expected: 5,
            actual: 3,
            ..
        }) => {}
        other => bail!("expected Conflict {{ expected: 5, actual: 3 }}, got {other:?}"),
    }
    assert_eq!(event_count(&t, &existing).await?, 3);
    assert_eq!(log.reads().stream_version(&existing).await?, 3);

    // The key went with the conflicting transaction: the corrected retry appends.
    let mut corrected = request(&existing, 3, &events);
    corrected.idempotency = Some(&key);
    let (_, version) = committed(&log.appends().append(corrected).await?)?;
    assert_eq!(version, 5);
    assert_eq!(event_count(&t, &existing).await?, 5);
    t.drop_database().await
}

/// Eight concurrent retries of one request with one idempotency key: one append, seven
/// duplicates answering the first result. The key with other request bytes is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_with_one_idempotency_key_append_once() -> Result<()> {
    const RETRIES: usize = 8;
    let t = TestLog::create("idempotent_retries", RETRIES + 1).await?;
    let log = &t.log;
    let doc_id = doc("retried");
    let blob = blob_bytes(7, 4096);
    let sha = sha256_hex(&blob);
    let put = put_document("Retried", &blob, 4, 16, 7);
    let events = Document::default().decide(&DocumentCommand::Put(put))?;
    let request_bytes = serde_json::to_vec(&serde_json::json!({
        "doc_id": doc_id.as_str(), "title": "Retried", "blob": sha,
    }))?;
    let key = IdempotencyKey::new("retry-key-1".into(), &request_bytes);
    let make_request = || AppendRequest {
        doc_id: &doc_id,
        expected_stream_version: 0,
        events: &events,
        doc_version: 1,
        deleted: false,
        blob: Some((&sha, blob.clone())),
        idempotency: Some(&key),
        resolves: None,
    };

    let results = tokio::time::timeout(
        NO_HANG,
        join_all((0..RETRIES).map(|_| log.appends().append(make_request()))),
    )
    .await
    .context("retries hung")?;
    let results: Vec<Appended> = results.into_iter().collect::<Result<_, _>>()?;
    let winners: Vec<_> = results
        .iter()
        .filter(|r| matches!(r, Appended::Committed { .. }))
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let (last, stream_version) = committed(winners[0])?;
    assert_eq!(stream_version, 3);
    let first_answer = IdempotentResult {
        version: 1,
        log_position: Some(last.position),
        unchanged: false,
    };
    for result in &results {
        if let Appended::Duplicate(answer) = result {
            assert_eq!(answer, &first_answer);
        }
    }
    assert_eq!(event_count(&t, &doc_id).await?, 3);

    // A later retry gets the same answer.
    assert_eq!(
        log.appends().append(make_request()).await?,
        Appended::Duplicate(first_answer.clone())
    );

    // The same key for a different request is refused and appends nothing.
    let other_key = IdempotencyKey::new("retry-key-1".into(), b"another request");
    let other_events = row_events(2, 1, "other");
    let mut other = request(&doc_id, 3, &other_events);
    other.idempotency = Some(&other_key);
    match log.appends().append(other).await {
        Err(LogError::IdempotencyKeyReused { key }) => assert_eq!(key, "retry-key-1"),
        other => bail!("expected IdempotencyKeyReused, got {other:?}"),
    }
    assert_eq!(event_count(&t, &doc_id).await?, 3);
    assert_eq!(log.reads().stream_version(&doc_id).await?, 3);
    let client = log.client().await?;
    let keys: i64 = client
        .query_one("SELECT count(*) FROM idempotency_keys", &[])
        .await?
        .get(0);
    assert_eq!(keys, 1);
    drop(client);
    t.drop_database().await
}

/// Blob bytes are stored once per sha256, however many streams (appending concurrently)
/// carry them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_bytes_are_stored_once_per_sha256() -> Result<()> {
    let t = TestLog::create("blob_stored_once", 6).await?;
    let log = &t.log;
    let shared = blob_bytes(1, 4096);
    let other = blob_bytes(2, 4096);
    let docs: Vec<DocId> = (0..5).map(|i| doc(&format!("blob-{i}"))).collect();
    let results = join_all(docs.iter().enumerate().map(|(i, doc_id)| {
        let blob = if i < 4 { &shared } else { &other };
        async move {
            let mut document = Document::default();
            let put = put_document(&format!("Doc {i}"), blob, 2, 8, i as u64);
            execute(
                log,
                doc_id,
                &mut document,
                &DocumentCommand::Put(put),
                Some(blob),
            )
            .await
        }
    }))
    .await;
    for result in results {
        committed(&result?.context("a new document appends")?)?;
    }
    let client = log.client().await?;
    let rows = client
        .query("SELECT sha256, size, content FROM blobs ORDER BY size", &[])
        .await?;
    assert_eq!(rows.len(), 2, "one row per distinct blob");
    for row in &rows {
        let sha = hex::encode(row.get::<_, &[u8]>(0));
        let content: &[u8] = row.get(2);
        assert_eq!(row.get::<_, i64>(1), 4096);
        assert_eq!(sha256_hex(content), sha, "content matches its key");
        assert!(sha == sha256_hex(&shared) || sha == sha256_hex(&other));
    }
    drop(client);
    t.drop_database().await
}

/// `load` rebuilds the state that applying the events gives, after every command, and a
/// snapshot changes nothing in the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_rebuilds_the_applied_state_with_or_without_snapshot() -> Result<()> {
    let t = TestLog::create("load_rebuilds_state", 4).await?;
    let log = &t.log;
    let doc_id = doc("loaded/doc-1");
    let blob_v1 = blob_bytes(11, 4096);
    let blob_v2 = blob_bytes(12, 2048);
    let mut v1 = put_document("First", &blob_v1, 3, 16, 1);
    let v1_state = v1.clone();
    v1.expected_version = Some(0);
    let v2 = put_document("Second", &blob_v2, 2, 16, 2);
    let mut v2_again = v2.clone();
    v2_again.expected_version = Some(2);
    let mut v4 = put_document("Back", &blob_v1, 5, 16, 4);
    v4.blob = None;
    let steps: Vec<(DocumentCommand, Option<&Bytes>)> = vec![
        (DocumentCommand::Put(v1), Some(&blob_v1)),
        (DocumentCommand::Put(v2), Some(&blob_v2)),
        (DocumentCommand::Put(v2_again), Some(&blob_v2)), // unchanged: appends nothing
        (
            // Milvus refused version 2: roll back to version 1's state as version 3.
            DocumentCommand::RequestCompensation {
                version: 2,
                target: "milvus".into(),
                reason: "collection missing".into(),
                restore: Restore::Version {
                    version: 1,
                    content: v1_state,
                },
            },
            None,
        ),
        (
            DocumentCommand::Delete {
                expected_version: Some(3),
            },
            None,
        ),
        (DocumentCommand::Put(v4), None),
    ];

    let mut document = Document::default();
    let mut all_events = Vec::new();
    for (i, (command, blob)) in steps.iter().enumerate() {
        let before = document.stream_version;
        execute(log, &doc_id, &mut document, command, *blob).await?;
        assert_eq!(
            log.appends().load(&doc_id).await?,
            document,
            "after step {i}"
        );
        if i == 1 {
            log.appends().save_snapshot(&doc_id, &document).await?;
            assert_eq!(
                log.appends().load(&doc_id).await?,
                document,
                "from the snapshot"
            );
        }
        let mut follower = Follower::new(100);
        follower
            .read_exactly(log, document.stream_version as usize)
            .await?;
        all_events = follower.events.into_iter().map(|e| e.event).collect();
        assert_eq!(
            all_events.len() as i64,
            document.stream_version,
            "step {i} from {before}"
        );
    }
    assert_eq!(document.version, 5);
    assert!(document.is_live());
    assert_eq!(Document::replay(&all_events), document);

    // A snapshot at the head, and one only a later append passes: the same state either way.
    let client = log.client().await?;
    let snapshot_at: i64 = client
        .query_one(
            "SELECT stream_version FROM snapshots WHERE stream_id = $1",
            &[&doc_id.as_str()],
        )
        .await?
        .get(0);
    assert_eq!(
        snapshot_at, 6,
        "the snapshot of step 1 (two puts of three events)"
    );
    log.appends().save_snapshot(&doc_id, &document).await?;
    assert_eq!(log.appends().load(&doc_id).await?, document);
    // A snapshot of a shape this build cannot read (an older one's): the whole stream is
    // replayed instead.
    client
        .execute(
            "UPDATE snapshots SET stream_version = 3, state = '{\"shape\": \"older\"}'",
            &[],
        )
        .await
        .context("outdate the snapshot")?;
    assert_eq!(
        log.appends().load(&doc_id).await?,
        document,
        "an unreadable snapshot is replayed over"
    );
    client
        .execute("DELETE FROM snapshots", &[])
        .await
        .context("remove snapshots")?;
    assert_eq!(
        log.appends().load(&doc_id).await?,
        document,
        "without snapshot"
    );
    drop(client);
    t.drop_database().await
}

/// A fresh log starts at epoch 1; every cursor carries it, and reconnecting (migrating again)
/// keeps the log's identity and epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_log_is_at_epoch_one_and_cursors_carry_it() -> Result<()> {
    let t = TestLog::create("epoch_one", 2).await?;
    let log = &t.log;
    let raw = t.raw_client().await?;
    let epoch: i32 = raw
        .query_one("SELECT epoch FROM log_meta", &[])
        .await?
        .get(0);
    assert_eq!(epoch, 1);

    let doc_id = doc("epoch");
    let appended = log
        .appends()
        .append(request(&doc_id, 0, &row_events(1, 2, "epoch")))
        .await?;
    let (last, _) = committed(&appended)?;
    assert_eq!(last.epoch, 1);
    let row = raw
        .query_one(
            "SELECT epoch, xid::text, position FROM events ORDER BY position DESC LIMIT 1",
            &[],
        )
        .await?;
    let stored = LogCursor {
        epoch: row.get(0),
        xid: row.get::<_, &str>(1).parse()?,
        position: row.get(2),
    };
    assert_eq!(last, stored);

    let mut follower = Follower::new(10);
    follower.read_exactly(log, 2).await?;
    assert!(follower.events.iter().all(|e| e.cursor.epoch == 1));
    assert_eq!(follower.cursor, last);

    let again = t.connect_again(2).await?;
    assert_eq!(again.log_id(), log.log_id());
    let epoch: i32 = raw
        .query_one("SELECT epoch FROM log_meta", &[])
        .await?
        .get(0);
    assert_eq!(epoch, 1, "reconnecting must not start a new epoch");
    drop(again);
    drop(raw);
    t.drop_database().await
}

/// A committed append wakes a reader waiting in `wait_for_append` (NOTIFY), long before the
/// wait's timeout; an open append does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_append_wakes_a_waiting_reader() -> Result<()> {
    const LONG_WAIT: Duration = Duration::from_secs(30);
    let t = TestLog::create("append_wakes_reader", 4).await?;
    let log = &t.log;
    // Once this is read, the log's listener is up (it reads nothing before it listens).
    log.appends()
        .append(request(&doc("warm-up"), 0, &row_events(1, 1, "warm-up")))
        .await?;
    let mut warm_up = Follower::new(10);
    warm_up.read_exactly(log, 1).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    for round in 0..3i64 {
        let waiter = tokio::spawn({
            let log = log.clone();
            async move {
                let started = std::time::Instant::now();
                log.wait_for_append(LONG_WAIT).await;
                started.elapsed()
            }
        });
        let mut client = log.client().await?;
        let tx = client.transaction().await?;
        let held = doc(&format!("held-{round}"));
        log.appends()
            .append_in(&tx, request(&held, 0, &row_events(1, 1, "held")))
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiter.is_finished(),
            "round {round}: woken before any commit"
        );
        tx.rollback().await?;

        let woke_doc = doc("woken");
        log.appends()
            .append(request(&woke_doc, round, &row_events(1, 1, "wake")))
            .await?;
        let waited = tokio::time::timeout(NO_HANG, waiter).await??;
        assert!(
            waited < Duration::from_secs(5),
            "round {round}: woken after {waited:?}, not by the append's NOTIFY"
        );
    }
    t.drop_database().await
}

/// A parked change wakes the compensator of every process at once (NOTIFY on a channel of
/// its own), and a committed append does not: the compensator used to wait on the appends'
/// notification and read the parked changes after every group of appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_change_wakes_every_process_and_an_append_does_not() -> Result<()> {
    const LONG_WAIT: Duration = Duration::from_secs(30);
    let t = TestLog::create("parking_wakes_compensators", 4).await?;
    let other = t.connect_again(4).await?;
    let wait_both = || -> Vec<tokio::task::JoinHandle<Duration>> {
        [t.log.clone(), other.clone()]
            .into_iter()
            .map(|log| {
                tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    log.wait_for_parked(LONG_WAIT).await;
                    started.elapsed()
                })
            })
            .collect()
    };
    let refused = projections::SinkError::permanent("mysql", "apply", "refused in a test");
    let parked = |doc_id: &DocId| projections::sink::DocChange {
        doc_id: doc_id.clone(),
        version: 1,
        cursor: LogCursor::START,
        change: projections::sink::Change::Remove,
    };
    // Warm-up: once a parking has woken both, both listeners listen.
    let warm_up = wait_both();
    t.log
        .park("mysql", &parked(&doc("warm-up")), &refused)
        .await?;
    for waiter in warm_up {
        tokio::time::timeout(NO_HANG, waiter).await??;
    }
    for round in 0..2i64 {
        let waiters = wait_both();
        let appended = doc(&format!("appended-{round}"));
        t.log
            .appends()
            .append(request(&appended, 0, &row_events(1, 1, "appended")))
            .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            waiters.iter().all(|w| !w.is_finished()),
            "round {round}: an append woke a compensator"
        );

        t.log.park("mysql", &parked(&appended), &refused).await?;
        for waiter in waiters {
            let waited = tokio::time::timeout(NO_HANG, waiter).await??;
            assert!(
                waited < Duration::from_secs(5),
                "round {round}: woken after {waited:?}, not by the parking's NOTIFY"
            );
        }
    }
    drop(other);
    t.drop_database().await
}
